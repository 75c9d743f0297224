"""What a message says (templates.py) and the signed unsubscribe links in
it (unsubscribe_tokens.py: signed by the worker, checked by web/)."""
