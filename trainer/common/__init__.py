"""What every layer shares: typed errors and their exit codes, settings dataclasses <-> argparse,
atomic writes. May import nothing else of the trainer (handlers only)."""
