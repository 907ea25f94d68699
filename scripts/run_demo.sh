echo "run_demo: nothing yet"
