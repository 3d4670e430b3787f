"""The ``cadre`` command (typer). Only installed with the ``cli`` extra; nothing else imports it."""
