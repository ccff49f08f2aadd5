"""The report step: the run report (render.py, from the step records of records.py) as the DAG's last step, an HTML
artifact for the KFP UI; a local run writes the same page with its step times (pipeline/local.py)."""
