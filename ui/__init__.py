"""Helpers of the Streamlit dashboard (outside pages/, so Streamlit does not list them as pages).

charts  plotly figures built from engine results (no streamlit: testable and exportable)
common  page set-up, error display, chart/table widgets with downloads, shared pickers
compare the Compare page's column choices, verdict sentences and letter-table captions
"""
