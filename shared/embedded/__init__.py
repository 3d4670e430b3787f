"""The embedded dev stack: a nats-server child process and the services as child processes."""
