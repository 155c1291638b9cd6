"""The model's units, stated once.

=====================  =========================================================
time                   hours (h)
amounts                cells; DNA and radiolabel in cell-equivalents (one
                       administered cell carries one genome and one unit of label)
volume                 millilitres (mL); tissue density 1 g/mL
flow                   mL/h (cardiac output is read in mL/min and converted)
rate constants         1/h
diameters              micrometres (µm)
body weight            grams (g)
radiolabel outputs     percent of injected activity (decay-corrected), or percent
                       of the activity in the whole body
=====================  =========================================================
"""

HOURS_PER_MINUTE = 1.0 / 60.0
MINUTES_PER_HOUR = 60.0
