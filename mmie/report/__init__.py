"""Tables, plots and pages of the report."""
