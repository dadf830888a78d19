"""makevl.models"""
