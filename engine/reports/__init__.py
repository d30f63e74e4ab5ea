"""What leaves ClinBench for a reader: charts and tables exported as files, a report zip.

export   charts as PNG/SVG/HTML, tables as CSV, a report zip
methods  a comparison's methods section (methods.md), written from the manifests
"""
