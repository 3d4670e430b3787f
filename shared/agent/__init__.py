"""The agent runtime (pull, run a brain, publish the result), the brain interface and the LLM client."""
