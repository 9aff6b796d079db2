"""The Dash app (`workbench dash`): layout, callbacks, figures and the session that calls the workbench's public
API (traces, probes, interventions, the results store). Nothing outside this package imports it."""
