"""The NGO's analysis: verified reports -> DuckDB -> tables, an HTML report, Parquet, Spark.

``database`` checks and loads report lines, ``queries`` holds the SQL both
engines run, ``html`` renders the publishable report, ``export`` writes the
Parquet dataset, ``synthetic`` makes test and benchmark data, ``cli`` is
``probe aggregate``. See docs/collector.md.
"""
