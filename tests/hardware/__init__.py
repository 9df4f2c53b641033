"""Tests of the hardware package (relay drivers on gpiozero MockFactory pins, simulated lock, fail-safe)."""
