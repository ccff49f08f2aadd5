"""The report step: the run report (pipeline/report.py) as the DAG's last step, an HTML artifact for the KFP UI."""
