"""`python -m engine ...`: the command line.

terminal  progress bars (one per stage of a step)
commands  the bodies of the commands
parser    the parser, and main()
"""
