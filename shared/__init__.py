"""Cadre's common library, one package per layer.

- ``shared.contract``: the wire contract (messages, subjects, errors, schemas, the
  workspace archive format, escaping of untrusted text). Imports nothing else of Cadre.
- ``shared.bus``: the bus and service framework (connection, supervised consumer,
  service shell, settings, topology bootstrap, uploads, large outputs).
- ``shared.agent``: the agent runtime, the brain interface, the LLM client.
- ``shared.tools``: what the agents run (tests, analysis, research index, fixes, the sandbox).
- ``shared.client``: the SDK (``from shared.client import CadreClient``) and, in
  ``shared.client.cli``, the ``cadre`` command. Nothing outside ``cli`` imports the CLI.
- ``shared.embedded``: the embedded dev stack (a nats-server child and the services as
  child processes), behind ``cadre up`` / ``cadre run`` and the tests.
"""

__version__ = "0.1.0"
