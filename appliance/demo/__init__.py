"""``appliance demo``: the appliance end to end on one machine with demo engines (not for clinical use)."""

from appliance.demo.run import DEMO_NOTICE, DemoOutcome, DemoRow, run_demo, running_demo

__all__ = ["DEMO_NOTICE", "DemoOutcome", "DemoRow", "run_demo", "running_demo"]
