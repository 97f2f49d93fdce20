"""The NGO side's first stop: a collector that receives signed reports from probes.

``server`` speaks the upload protocol (docs/upload-protocol.md), ``lines``
checks each received line, ``store`` keeps the lines durably as received,
``limits`` bounds what an uploader can make it spend, ``cli`` is
``probe collector serve``. See docs/collector.md.
"""
