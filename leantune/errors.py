"""User-facing errors: each one says what is wrong and what to do about it."""


class LeantuneError(Exception):
    """An error caused by the user's input (config, model, adapter, data), with a message that says how to fix it."""


class AdapterMismatchError(LeantuneError):
    """An adapter does not fit the model it is being loaded into."""
