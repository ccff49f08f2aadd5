"""The Action Unit pipeline: ingest -> download -> validate -> convert -> filter -> train -> evaluate -> push -> report."""

from kfp import dsl

from components.convert.component import convert
from components.download.component import download
from components.evaluate.component import evaluate
from components.filter.component import filter_examples
from components.ingest.component import ingest
from components.push.component import push
from components.report.component import report
from components.train.component import train
from components.validate.component import validate
from pipeline import defaults
from pipeline.platform import Platform

# Step name -> the KFP component, in DAG order. The names are the tasks' names in the spec.
STEPS = {
    "ingest": ingest,
    "download": download,
    "validate": validate,
    "convert": convert,
    "filter-examples": filter_examples,
    "train": train,
    "evaluate": evaluate,
    "push": push,
    "report": report,
}


def build_pipeline(platform: "Platform | None" = None):
    """The @dsl.pipeline function; `platform` sets images, resources and node pools per step."""
    platform = platform or Platform()

    @dsl.pipeline(name=defaults.PIPELINE_NAME, description=defaults.PIPELINE_DESCRIPTION)
    def au_pipeline(
        source: str = defaults.SOURCE,
        download_store: str = defaults.DOWNLOAD_STORE,
        download_workers: int = defaults.DOWNLOAD_WORKERS,
        download_timeout: float = defaults.DOWNLOAD_TIMEOUT,
        download_max_attempts: int = defaults.DOWNLOAD_MAX_ATTEMPTS,
        download_max_bytes: int = defaults.DOWNLOAD_MAX_BYTES,
        download_allow_private: bool = defaults.DOWNLOAD_ALLOW_PRIVATE,
        download_min_ok: float = defaults.DOWNLOAD_MIN_OK,
        schema_uri: str = defaults.VALIDATE_SCHEMA_URI,
        max_anomalies: int = defaults.VALIDATE_MAX_ANOMALIES,
        validation_fraction: float = defaults.CONVERT_VALIDATION_FRACTION,
        test_fraction: float = defaults.CONVERT_TEST_FRACTION,
        max_side: int = defaults.CONVERT_MAX_SIDE,
        beam_args: str = defaults.CONVERT_BEAM_ARGS,
        faces: str = defaults.FACES_MODE,
        no_face: str = defaults.FACES_NO_FACE,
        face_size: int = defaults.FACES_SIZE,
        face_margin: float = defaults.FACES_MARGIN,
        face_min_score: float = defaults.FACES_MIN_SCORE,
        aus: str = defaults.FILTER_AUS,
        policy: str = defaults.FILTER_POLICY,
        task: str = defaults.TRAIN_TASK,
        backbone: str = defaults.TRAIN_BACKBONE,
        image_size: int = defaults.TRAIN_IMAGE_SIZE,
        weights: str = defaults.TRAIN_WEIGHTS,
        fine_tune: str = defaults.TRAIN_FINE_TUNE,
        epochs: int = defaults.TRAIN_EPOCHS,
        batch_size: int = defaults.TRAIN_BATCH_SIZE,
        optimizer: str = defaults.TRAIN_OPTIMIZER,
        learning_rate: float = defaults.TRAIN_LEARNING_RATE,
        seed: int = defaults.TRAIN_SEED,
        checkpoint_dir: str = defaults.TRAIN_CHECKPOINT_DIR,
        augment: bool = defaults.TRAIN_AUGMENT,
        registry: str = defaults.REGISTRY,
        model_name: str = defaults.MODEL_NAME,
        min_macro_f1: float = defaults.EVALUATE_MIN_MACRO_F1,
        min_macro_auc: float = defaults.EVALUATE_MIN_MACRO_AUC,
        tolerance: float = defaults.EVALUATE_TOLERANCE,
        force_push: bool = defaults.PUSH_FORCE,
        keep_versions: int = defaults.PUSH_KEEP,
    ):
        """Trains, evaluates and pushes a facial Action Unit detector from an EmotioNet-format sheet.

        Args:
            source: The sheet (.xlsx or .csv, EmotioNet layout: URL then AU1..AU60), a local path or gs:// URI.
            download_store: Local folder or gs:// prefix keeping images and ledger across runs ("" for none).
            download_workers: Parallel downloads.
            download_timeout: Seconds allowed to connect and for each read of a request; its total deadline is 3 x this.
            download_max_attempts: Attempts per URL for transient failures.
            download_max_bytes: Largest body accepted, in bytes.
            download_allow_private: Allow private and loopback addresses (True for the demo, False on a cluster).
            download_min_ok: Stop the run when fewer than this share of the URLs gave an image (always when none did).
            schema_uri: Where the TFDV schema is kept between runs (local or gs://; "" to infer each run).
            max_anomalies: Most data anomalies tolerated before validate stops the run.
            validation_fraction: Share of images in the validation split.
            test_fraction: Share of images in the test split.
            max_side: Longest image side after resizing in convert (0 keeps the size).
            beam_args: Apache Beam pipeline options for convert and filter, e.g. "--runner=DataflowRunner --project=P".
            faces: crop (find the largest face, level its eyes, crop it) or whole (the whole picture).
            no_face: What to do with an image in which no face is found: skip or whole.
            face_size: Side of the square face crop, in pixels.
            face_margin: Added on each side of the face box, as a share of its side.
            face_min_score: Detector confidence needed to call it a face (0..1).
            aus: Comma-separated AU numbers to train on.
            policy: What to do with 999 (not annotated) in a kept AU: drop, mask or zero.
            task: au (multi-label Action Units) or va (valence/arousal regression).
            backbone: keras.applications backbone in lower case (vgg16, inceptionv3, resnet50, efficientnetv2b0, mobilenetv3small) or compactcnn (small, learns from scratch on a CPU).
            image_size: Input side in pixels (0 follows the backbone).
            weights: imagenet, a weights file path or gs:// URI, or none.
            fine_tune: Which layers train: head, last:N, full or two-stage.
            epochs: Training epochs.
            batch_size: Batch size per GPU replica (0 follows the backbone's default).
            optimizer: rmsprop, adam or adamw.
            learning_rate: Initial learning rate.
            seed: Random seed of training.
            checkpoint_dir: Where each epoch's checkpoint goes, local or gs:// ("" = inside the model folder); a restarted train step resumes from it.
            augment: Augment training images (flip, small rotation, crop, colour).
            registry: Model registry root, a local folder or gs:// prefix.
            model_name: Name of the model in the registry.
            min_macro_f1: Lowest macro F1 that can be blessed.
            min_macro_auc: Lowest macro AUC that can be blessed.
            tolerance: How much worse than the live model a blessed model may be (macro F1).
            force_push: Push even when the model is not blessed.
            keep_versions: Versions kept in the registry (0 keeps all).
        """
        ingest_task = ingest(source=source)
        download_task = download(
            manifest=ingest_task.outputs["manifest"],
            store=download_store,
            workers=download_workers,
            timeout=download_timeout,
            max_attempts=download_max_attempts,
            max_bytes=download_max_bytes,
            allow_private=download_allow_private,
            min_ok=download_min_ok,
        )
        validate_task = validate(
            manifest=ingest_task.outputs["manifest"],
            downloads=download_task.outputs["downloads"],
            schema_uri=schema_uri,
            max_anomalies=max_anomalies,
        )
        convert_task = convert(
            manifest=ingest_task.outputs["manifest"],
            downloads=download_task.outputs["downloads"],
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            max_side=max_side,
            beam_args=beam_args,
            faces=faces,
            no_face=no_face,
            face_size=face_size,
            face_margin=face_margin,
            face_min_score=face_min_score,
        )
        # Converting data that failed validation would waste the rest of the run.
        convert_task.after(validate_task)
        filter_task = filter_examples(
            examples=convert_task.outputs["examples"], aus=aus, policy=policy, beam_args=beam_args
        )
        train_task = train(
            examples=filter_task.outputs["filtered"],
            task=task,
            backbone=backbone,
            image_size=image_size,
            weights=weights,
            fine_tune=fine_tune,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=learning_rate,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            augment=augment,
        )
        evaluate_task = evaluate(
            examples=filter_task.outputs["filtered"],
            model=train_task.outputs["model"],
            registry=registry,
            model_name=model_name,
            min_macro_f1=min_macro_f1,
            min_macro_auc=min_macro_auc,
            tolerance=tolerance,
        )
        # The push step reads the blessing and refuses an unblessed model itself: kfp.local
        # runs no dsl.If, and one DAG must run the same locally and on a cluster.
        push_task = push(
            model=train_task.outputs["model"],
            evaluation=evaluate_task.outputs["evaluation"],
            destination=registry,
            model_name=model_name,
            force=force_push,
            keep=keep_versions,
        )
        # The run report as an HTML artifact, which the KFP UI shows; a local run also writes RUN_DIR/report.html.
        report_task = report(
            manifest=ingest_task.outputs["manifest"],
            downloads=download_task.outputs["downloads"],
            validation=validate_task.outputs["validation"],
            examples=convert_task.outputs["examples"],
            filtered=filter_task.outputs["filtered"],
            model=train_task.outputs["model"],
            evaluation=evaluate_task.outputs["evaluation"],
            pushed=push_task.outputs["pushed"],
        )
        tasks = {
            "ingest": ingest_task,
            "download": download_task,
            "validate": validate_task,
            "convert": convert_task,
            "filter-examples": filter_task,
            "train": train_task,
            "evaluate": evaluate_task,
            "push": push_task,
            "report": report_task,
        }
        for step, t in tasks.items():
            platform.configure(step, t)

    return au_pipeline


au_pipeline = build_pipeline()
