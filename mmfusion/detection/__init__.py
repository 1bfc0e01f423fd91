"""Golden-template defect detection: a small CenterNet-style network, its targets, box decoding and training."""
