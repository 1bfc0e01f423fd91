"""Golden-template detection head: a small CenterNet-style network and its box decoding."""
