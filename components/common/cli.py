"""What every step's command line shares: argparse errors as one line, not a usage block."""
import argparse


class StepArgumentParser(argparse.ArgumentParser):
    """Bad flags: one line naming the problem, exit 2 (argparse's own message, without the usage block)."""

    def error(self, message):
        if "--beam-args" in message and "expected one argument" in message:
            message += ' (its value starts with "--": write --beam-args="--runner=DataflowRunner ...")'
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
