"""transfer-bench plugin: EfficientNet-Lite0, L2-SP fine-tuning, a channels-last runtime.

Installed, it registers through the entry point group ``transfer_bench`` (see
``setup.cfg``); nothing in transfer-bench names it.
"""
__version__ = "0.1.0"
