"""KFP wrapper of the publish step: a step's output copied to a URI chosen in advance (a cluster sweep's examples)."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def publish(source: dsl.Input[dsl.Dataset], destination: str):
    """Copies a step's output folder to a fixed URI, for later runs that import it from there.

    Args:
        source: The folder to copy (a cluster sweep's filtered examples).
        destination: Where it goes, a local folder or gs:// prefix; published.json is written there last.
    """
    from components.publish import logic

    record = logic.run(source.path, destination)
    print(f"publish: {record['files']} files to {record['destination']}")
