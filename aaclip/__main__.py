from aaclip.cli import main

main()
