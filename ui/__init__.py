"""Helpers of the Streamlit dashboard (outside pages/, so Streamlit does not list them as pages).

calibration  Compare's calibration table and reliability diagram
charts  plotly figures built from engine results (no streamlit: testable and exportable)
common  page set-up, error display, chart/table widgets with downloads, shared pickers
compare the Compare page's column choices, verdict sentences and letter-table captions
duplicates  the Data page's duplicate groups, near copies and label conflicts
external    Compare's external validation: a stored classifier scored on another labelled file
forms   the Runs form's option widgets, drawn from the engine's option fields
report  a comparison's figures and tables (home page, Export)
numbering  the one row numbering the pages show (the input file's data rows, from 1)
runs    the Runs page's step progress and time estimate
storage the cache's size by run, dataset, model and folder (home page)
"""
