def main(argv=None):  # placeholder, replaced by the firmware_protocol work
    raise SystemExit("metaemg-sim: not implemented yet")
