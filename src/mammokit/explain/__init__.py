"""What a prediction looks at: class activation maps (`cam`), the patch classifier's maps over a whole image
(`patch`), overlays a reader can read (`overlay`) and the evaluate report's panels (`report_panels`).

It sits below the prediction runtime (`infer` imports it; it imports no `infer` module) and beside `engine`
(neither imports the other: `mammokit evaluate` hands `report_panels` to `engine.evaluate`). The names a user
picks from (CAM methods, the primary patch map) are defined in `names` and offered by `infer.config`.
"""
