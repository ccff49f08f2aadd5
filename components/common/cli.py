"""What the steps' command lines share: argparse errors as one line, and the step's own log lines."""
import argparse
import logging


class StepArgumentParser(argparse.ArgumentParser):
    """Bad flags: one line naming the problem, exit 2 (argparse's own message, without the usage block)."""

    def error(self, message):
        if "--beam-args" in message and "expected one argument" in message:
            message += ' (its value starts with "--": write --beam-args="--runner=DataflowRunner ...")'
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def setup_logging() -> None:
    """The step's own progress at INFO; the libraries under it (Beam, TensorFlow) only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("components").setLevel(logging.INFO)
