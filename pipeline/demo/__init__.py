"""The demo world: synthetic Action Unit faces in web-photo scenes (or portraits), an EmotioNet-format sheet and a loopback image server with the web's faults."""
from pipeline.demo.generate import generate_demo, load_labels
from pipeline.demo.server import DemoServer
from pipeline.demo.sheet import fault_table_path, write_sheet

__all__ = ["DemoServer", "fault_table_path", "generate_demo", "load_labels", "write_sheet"]
