"""The deploy stage: the transferred specialist in the agent's perception loop, and its export."""
