"""Mover plugins. Each mover is a plain object with a synchronous
``run(job) -> Result`` executed in a worker thread by agentd."""
