"""KFP wrapper of the publish step: a step's output copied to a URI chosen in advance (a cluster sweep's examples)."""
from kfp import dsl

from components.common import images
from components.publish.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def publish(source: dsl.Input[dsl.Dataset], destination: str):
    from components.common.errors import refusals
    from components.publish import logic

    with refusals("publish"):
        record = logic.run(source.path, destination)
    print(f"publish: {record['files']} files to {record['destination']}")
