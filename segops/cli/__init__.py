"""The `segops` command. Imports stay lazy so `segops --help` is fast."""
