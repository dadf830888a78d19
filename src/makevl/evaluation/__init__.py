"""makevl.evaluation"""
