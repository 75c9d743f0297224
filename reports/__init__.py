"""What our customers are saying (WOCAS): the weekly report, the lifecycle
metrics and a generator of realistic history to see them on, all from
PostgreSQL."""
