"""Job functions, one module per rules file (rules/<name>.smk -> mmie/jobs/<name>.py); scripts/ call these."""
