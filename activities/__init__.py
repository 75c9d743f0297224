"""The Temporal activity classes the workflows call, and the worker's
settings; what they use lives in store/, providers/ and messages/."""
