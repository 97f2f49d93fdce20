"""The control vantage: a helper server on an uncensored network, and the probe's client."""
