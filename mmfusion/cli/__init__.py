"""The `mmfusion` command line: one module per area, each with `add_commands(sub)`."""
