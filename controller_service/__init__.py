"""Ada-Segment controller: policy mathematics, run state machine, REST service and client."""
