"""The HTTP service customers and providers call: unsubscribe links and webhooks."""
