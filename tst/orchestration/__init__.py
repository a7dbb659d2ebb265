"""The roof over the stages: the `tst` command (cli.py), `tst run`'s pipeline of stages (pipeline.py) and the
GPU check that times several stages' networks (device_check.py). Nothing below this folder imports from it."""
