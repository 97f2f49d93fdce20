"""What the two servers that face the Internet share: the control helper and the collector.

Rate limits (``buckets``) now; connection guards and log hygiene belong here too.
Nothing here measures anything or knows a report's format.
"""
