"""KFP wrapper of the filter step: keep an Action Unit set and a policy for unknown labels."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def filter_examples(
    examples: dsl.Input[dsl.Dataset],
    filtered: dsl.Output[dsl.Dataset],
    aus: str,
    policy: str,
    beam_args: str,
):
    """Keeps the chosen Action Units in every example and applies the policy for 999.

    Args:
        examples: Folder written by convert.
        filtered: Folder with the filtered TFRecord shards and examples_summary.json.
        aus: Comma-separated AU numbers to keep, e.g. "1,2,4,5,6,9,12,17,20,25,26".
        policy: What to do with 999 (not annotated) in a kept AU: drop, mask or zero.
        beam_args: Apache Beam pipeline options, e.g. "--runner=DataflowRunner --project=P" ("" for the local runner).
    """
    from components.common.storage import artifact_location
    from components.filter import logic

    logic.run(
        examples_dir=artifact_location(examples, beam_args),
        output_dir=artifact_location(filtered, beam_args),
        aus=aus,
        policy=policy,
        beam_args=beam_args,
    )
