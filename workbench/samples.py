"""The built-in sample text that the commands, the app and the tasks run on when given no text."""

SAMPLE_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, trimmed "
    "the wick and wrote the weather in a leather logbook: wind from the west, a light swell, two ships passing "
    "north. In the morning he walked down to the harbour, where the fishermen were mending their nets, and "
    "bought bread, salt and a newspaper that was already three days old."
)
