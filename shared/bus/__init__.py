"""The bus and service framework: connection, supervised consumer, service shell, settings."""
