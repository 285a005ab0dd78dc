"""Tables: takes the paper tables' CSVs and the runs' metrics and benchmark records and gives each paper table with
our numbers, their spread and a verdict beside the paper's, plus runs.csv and models.csv."""
