"""samie-node: a DICOM node that runs SAM-IE on studies a PACS sends and returns SEG and SR."""

__version__ = "0.1.0"
