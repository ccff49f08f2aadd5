"""Installable package of the EmotioNet Action Unit pipeline: the DAG (`pipeline`) and its steps (`components`)."""
from setuptools import find_packages, setup

setup(
    name="emotionet-au-pipeline",
    version="0.1.0",
    description="Kubeflow pipeline that turns the EmotioNet sheet into a deployed facial Action Unit detector",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*"]),
)
