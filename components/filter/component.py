"""KFP wrapper of the filter step: keep an Action Unit set and a policy for unknown labels."""
from kfp import dsl

from components.common import images
from components.filter.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def filter_examples(
    examples: dsl.Input[dsl.Dataset],
    filtered: dsl.Output[dsl.Dataset],
    aus: str,
    policy: str,
    beam_args: str,
):
    from components.common.errors import refusals
    from components.common.storage import artifact_location
    from components.filter import logic

    with refusals("filter"):
        logic.run(
            examples_dir=artifact_location(examples, beam_args),
            output_dir=artifact_location(filtered, beam_args),
            aus=aus,
            policy=policy,
            beam_args=beam_args,
        )
