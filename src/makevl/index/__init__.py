"""makevl.index"""
